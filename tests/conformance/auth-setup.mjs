// When CONFORMANCE_TOKEN is set (runs through auth-gateway), every request the
// suite sends to the server under test carries `Authorization: Bearer <token>`.
// The suite and its client library call the global fetch, so wrapping it is
// enough; requests elsewhere (none today) are left alone.
const token = process.env.CONFORMANCE_TOKEN
const baseUrl = process.env.CONFORMANCE_BASE_URL

if (token && baseUrl) {
  const send = globalThis.fetch
  globalThis.fetch = (input, init = {}) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url
    if (!url.startsWith(baseUrl)) {
      return send(input, init)
    }
    const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined))
    if (!headers.has('authorization')) {
      headers.set('authorization', `Bearer ${token}`)
    }
    return send(input, { ...init, headers })
  }
}
