import { EventService } from "../../api/gen/cloudless/v1/event_pb.js";
import { eventServiceImpl } from "../api/eventService.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { EventLog } from "./eventLog.js";

/** The cluster's event log (REQ-071): every module records into it. */
export const eventsKey = moduleKey<EventLog>("event log");

/** The event log, its API (list, watch) and its trimming by the leader. */
export const eventsModule: ModuleDefinition = {
  name: "events",
  start(context) {
    const events = new EventLog(context.store, context.clock, undefined, context.rng);
    context.provide(eventsKey, events);
    return {
      routes: (router) => {
        router.service(EventService, eventServiceImpl({ events, clock: context.clock }));
      },
      // Trimming is the leader's job; followers would only race it.
      maintain: () => events.trim(),
    };
  },
};
