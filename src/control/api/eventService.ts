import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { CloudlessError } from "../../api/errors.js";
import type { EventService, WatchEventsResponse } from "../../api/gen/cloudless/v1/event_pb.js";
import { WatchEventsResponseSchema } from "../../api/gen/cloudless/v1/event_pb.js";
import { limitRef, limits } from "../../api/limits.js";
import type { Clock } from "../../lib/clock.js";
import type { ClusterEvent, EventLog } from "../events/eventLog.js";
import { requireAdmin } from "./context.js";
import { eventToProto } from "./convert.js";

/** Events a slow watcher may fall behind by before its stream is ended. */
const watchBufferLimit = 10_000;

/** An event id is "<revision>" or "<revision>.<index>": a 2^53 revision is 16 digits. */
const eventIdMaxChars = 24;

/** Refuses a query beyond the limits before the log is read; fields named as in the API. */
function checkQuery(request: { types: string[]; afterId: string; subject?: string }): void {
  if (request.types.length > limits.eventTypesPerQuery) {
    throw CloudlessError.invalid(
      `types: at most ${limits.eventTypesPerQuery} event types per query ${limitRef("eventTypesPerQuery")}`,
    );
  }
  if ((request.subject?.length ?? 0) > limits.eventSubjectChars) {
    throw CloudlessError.invalid(
      `subject must be at most ${limits.eventSubjectChars} characters ${limitRef("eventSubjectChars")}`,
    );
  }
  if (request.afterId.length > eventIdMaxChars) {
    throw CloudlessError.invalid(
      `after_id is not an event id; use an id from an event list (e.g. 1234 or 1234.0005)`,
    );
  }
}

export interface EventServiceDeps {
  events: EventLog;
  clock: Clock;
}

export function eventServiceImpl(services: EventServiceDeps): ServiceImpl<typeof EventService> {
  return {
    async listEvents(request, context) {
      requireAdmin(context);
      checkQuery(request);
      if (request.limit > limits.eventsPerList) {
        throw CloudlessError.invalid(
          `limit must be at most ${limits.eventsPerList} ${limitRef("eventsPerList")}; narrow the query with since_seconds, types or subject`,
        );
      }
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
      checkQuery(request);
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
