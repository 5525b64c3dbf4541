/** The cluster store: a revisioned key-value store shaped like etcd v3 (REQ-012). */

export { openSqliteStore, type SqliteStore, type SqliteStoreOptions } from "./sqliteStore.js";
export {
  type Compare,
  type KeyValue,
  type Lease,
  type Op,
  type OpResult,
  type RangeOptions,
  type RangeResult,
  type Store,
  StoreError,
  type TxnRequest,
  type TxnResult,
  type Watch,
  type WatchEnd,
  type WatchEvent,
  type WatchHandlers,
  type WatchOptions,
} from "./store.js";
