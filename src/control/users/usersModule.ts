import { UserService } from "../../api/gen/cloudless/v1/user_pb.js";
import { auditedMethodName, stringField } from "../api/audit.js";
import { eventsKey } from "../events/eventsModule.js";
import { type ModuleDefinition, moduleKey } from "../modules/module.js";
import { UserRegistry } from "./userRegistry.js";
import { userServiceImpl } from "./userService.js";

/** Users and their roles (ADR 0051): the API server checks every user request against it. */
export const usersKey = moduleKey<UserRegistry>("users");

export const usersModule: ModuleDefinition = {
  name: "users",
  start(context) {
    const users = new UserRegistry(context.store, context.clock);
    context.provide(usersKey, users);
    const deps = {
      users,
      ca: context.ca,
      clusterName: context.clusterName,
      events: context.use(eventsKey),
      clock: context.clock,
    };
    const target = ({ request }: { request: unknown }) => {
      const name = stringField(request, "name");
      return name ? `user/${name}` : "";
    };
    return {
      routes: (router) => {
        router.service(UserService, userServiceImpl(deps));
      },
      audited: new Map([
        [auditedMethodName(UserService.method.createUser), target],
        [auditedMethodName(UserService.method.revokeUser), target],
      ]),
    };
  },
};
