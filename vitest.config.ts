import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration and load tests open real sockets; two cores, so keep workers to two.
    maxWorkers: 2,
  },
});
