/**
 * The one place that loads @peculiar/x509, so that its prerequisites are always in place:
 * the Reflect metadata polyfill its dependency tsyringe needs, and Node's
 * WebCrypto as its crypto provider. Modules in this folder import `x509` from here,
 * never from "@peculiar/x509" directly.
 */
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto);

export { x509 };
