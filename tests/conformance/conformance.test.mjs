// Runs @durable-streams/server-conformance-tests against a running server.
// CONFORMANCE_BASE_URL is the server's origin, e.g. http://127.0.0.1:4437;
// run.sh starts a server and sets it.
import { runConformanceTests } from '@durable-streams/server-conformance-tests'

const baseUrl = process.env.CONFORMANCE_BASE_URL
if (!baseUrl) {
  throw new Error('CONFORMANCE_BASE_URL is not set: use tests/conformance/run.sh, or point it at a running server')
}

runConformanceTests({
  baseUrl,
  subscriptions: process.env.CONFORMANCE_SUBSCRIPTIONS === '1',
})
