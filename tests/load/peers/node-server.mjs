// Starts the Node reference server (npm `@durable-streams/server`,
// `DurableStreamTestServer`) for ds-load's matrix script.
//
//   node node-server.mjs --prefix DIR --port PORT [--host 127.0.0.1] [--data-dir DIR]
//
// --prefix is the npm prefix the package was installed into (the folder
// holding node_modules/). Without --data-dir the server keeps streams in
// memory; with it, in log files plus LMDB metadata under that folder.
// Streams are served at the root path: http://HOST:PORT/<stream>.
// Prints "listening on http://HOST:PORT" once it accepts requests and stops
// cleanly on SIGTERM or SIGINT.
import { createRequire } from "node:module"
import { join, resolve } from "node:path"
import { parseArgs } from "node:util"

const { values } = parseArgs({
  options: {
    prefix: { type: "string" },
    port: { type: "string", default: "4437" },
    host: { type: "string", default: "127.0.0.1" },
    "data-dir": { type: "string" },
  },
})

if (!values.prefix) {
  console.error("node-server.mjs: --prefix (the npm install prefix) is required")
  process.exit(2)
}

const requireFromPrefix = createRequire(join(resolve(values.prefix), "package.json"))
const { DurableStreamTestServer } = requireFromPrefix("@durable-streams/server")

const options = { port: Number(values.port), host: values.host }
if (values["data-dir"]) {
  options.dataDir = resolve(values["data-dir"])
}

const server = new DurableStreamTestServer(options)
const url = await server.start()
console.log(`listening on ${url} (storage: ${values["data-dir"] ? "file" : "memory"})`)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  try {
    await server.stop()
  } finally {
    process.exit(0)
  }
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
