import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import type { EventService, WatchEventsResponse } from "../../gen/cloudless/v1/event_pb.js";
import { WatchEventsResponseSchema } from "../../gen/cloudless/v1/event_pb.js";
import { CloudlessError } from "../../lib/errors.js";
import type { ClusterEvent } from "../events/eventLog.js";
import { type CoordinatorServices, requireAdmin } from "./context.js";
import { eventToProto } from "./convert.js";

/** Events a slow watcher may fall behind by before its stream is ended. */
const watchBufferLimit = 10_000;

export function eventServiceImpl(services: CoordinatorServices): ServiceImpl<typeof EventService> {
  return {
    async listEvents(request, context) {
      requireAdmin(context);
      const events = await services.events.list({
        sinceMs:
          request.sinceSeconds > 0
            ? services.clock.nowMs() - request.sinceSeconds * 1000
            : undefined,
        types: request.types,
        subject: request.subject || undefined,
        afterId: request.afterId || undefined,
        limit: request.limit,
      });
      return { events: events.map(eventToProto) };
    },

    async *watchEvents(request, context): AsyncGenerator<WatchEventsResponse> {
      requireAdmin(context);
      const queue: ClusterEvent[] = [];
      let ended: string | undefined;
      let wake: (() => void) | undefined;
      const notify = () => {
        wake?.();
        wake = undefined;
      };
      // Without an id: from now on.
      const afterId = request.afterId || undefined;
      const watch = services.events.watch(
        { ...(afterId ? { afterId } : {}), types: request.types },
        (event) => {
          if (queue.length >= watchBufferLimit) {
            ended = `watch fell more than ${watchBufferLimit} events behind; resume after id ${queue.at(-1)?.id}`;
          } else {
            queue.push(event);
          }
          notify();
        },
        (message) => {
          ended = message;
          notify();
        },
      );
      const onAbort = () => notify();
      context.signal.addEventListener("abort", onAbort);
      try {
        while (!context.signal.aborted) {
          const event = queue.shift();
          if (event) {
            yield create(WatchEventsResponseSchema, { event: eventToProto(event) });
            continue;
          }
          if (ended !== undefined) throw CloudlessError.unavailable(ended);
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
        }
      } finally {
        context.signal.removeEventListener("abort", onAbort);
        watch.cancel();
      }
    },
  };
}
