// Calls an HTTP API with `Authorization: Bearer <key>`, falling back to the
// key's other version when the API refuses the primary (401/403), as it
// may mid-rotation. The refusal is reported to the agent, which counts it
// for `keyward rotate`'s rollback and for alerts.
//
//   KEYWARD_SOCKET=/run/keyward/keys.sock \
//     node examples/node/fallback-http.mjs prod/billing-api https://api.example.com/v1/me
//
// Build the client first: (cd clients/node && npm ci && npm run build).
// In your own project: import { Client } from "@keyward/client";
import { Client } from "../../clients/node/dist/index.js";

const [key, url] = process.argv.slice(2);
if (!key || !url) {
  console.error("usage: fallback-http.mjs ENV/NAME URL");
  process.exit(2);
}

const client = new Client();
try {
  // A handle keeps the key current in the background: each request uses the
  // latest primary and fallback without a round trip to the agent.
  const handle = await client.handle(key);
  const res = await client.callWithFallback(handle, (secret) =>
    fetch(url, { headers: { authorization: `Bearer ${secret.toString("utf8")}` } }),
  );
  console.log(`${res.status} ${await res.text()}`);
  process.exitCode = res.ok ? 0 : 1;
} catch (e) {
  console.error(`fallback-http: ${e.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
