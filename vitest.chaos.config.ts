import { defineConfig } from "vitest/config";

/**
 * The chaos suite (issue 4): multi-host scenarios on network namespaces with injected
 * faults (test/helpers/netlab.ts). Needs root; `npm run test:chaos`. One file at a time:
 * each lab starts several processes per host, and faults are only meaningful on a machine
 * that is not also busy with another lab.
 */
export default defineConfig({
  test: {
    include: ["test/chaos/**/*.test.ts"],
    globalSetup: ["test/globalSetup.ts", "test/chaos/leakCheck.ts"],
    // Deadlines inside the tests bound every wait; these only have to exceed them.
    testTimeout: 300_000,
    hookTimeout: 180_000,
    pool: "forks",
    maxWorkers: 1,
    fileParallelism: false,
    reporters: ["default"],
  },
});
