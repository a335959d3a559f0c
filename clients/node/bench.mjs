// Latency of Client.get over one channel: 1,000 warm-up calls, then N
// timed ones (default 5,000), one at a time.
//
//   KEYWARD_SOCKET=/tmp/kw/keys.sock node bench.mjs prod/x [N]
//
// Prints `p50_us=<float> p99_us=<float>`. Needs `npm run build` first.
import { Client } from "./dist/index.js";

const [key, nArg] = process.argv.slice(2);
const n = Number(nArg ?? 5000);
if (!key || !process.env.KEYWARD_SOCKET || !Number.isInteger(n) || n < 1) {
  console.error("usage: KEYWARD_SOCKET=PATH node bench.mjs ENV/NAME [N]");
  process.exit(2);
}

const client = new Client();
try {
  for (let i = 0; i < 1000; i++) await client.get(key);
  const us = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await client.get(key);
    us[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  us.sort();
  const at = (q) => us[Math.min(n - 1, Math.ceil(q * n) - 1)];
  console.log(`p50_us=${at(0.5).toFixed(1)} p99_us=${at(0.99).toFixed(1)}`);
} finally {
  client.close();
}
