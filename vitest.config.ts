import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    // The chaos suite needs root and runs alone: vitest.chaos.config.ts, `npm run test:chaos`.
    exclude: [...configDefaults.exclude, "test/chaos/**"],
    // Keeps every log line of the run and fails it if a token or key leaked into one.
    globalSetup: ["test/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Cluster tests start real processes; keep parallelism modest on a 2-core machine.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
