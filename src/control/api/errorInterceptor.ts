import type { ConnectError, Interceptor, StreamRequest, UnaryRequest } from "@connectrpc/connect";
import { toConnectError } from "../../api/errors.js";

/**
 * Our errors become Connect codes at the edge (the one mapping is the contract's
 * toConnectError), for unary answers and for errors raised while a stream is running.
 * `observe` sees each error a unary call or a stream's start ended with, already mapped
 * (the server records refusals and logs internal and store errors there). The server and
 * the in-process API of the tests use this one interceptor, so they cannot drift apart.
 */
export function errorMappingInterceptor(
  observe?: (error: unknown, mapped: ConnectError, request: UnaryRequest | StreamRequest) => void,
): Interceptor {
  return (next) => async (request) => {
    try {
      const response = await next(request);
      if (!response.stream) return response;
      const messages = response.message;
      return {
        ...response,
        message: (async function* () {
          try {
            yield* messages;
          } catch (error) {
            throw toConnectError(error);
          }
        })(),
      };
    } catch (error) {
      const mapped = toConnectError(error);
      observe?.(error, mapped, request);
      throw mapped;
    }
  };
}
