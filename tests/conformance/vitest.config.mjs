// The suite's own tests carry their timeouts; only the runner is set here.
import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['conformance.test.mjs'],
    // Adds the bearer token when the suite runs through auth-gateway.
    setupFiles: ['./auth-setup.mjs'],
    reporters: ['default'],
    // Tests within the suite share one server; run the file on its own.
    fileParallelism: false,
  },
})
