// callWithFallback with its options: a custom auth test, the service name
// the agent's reports show, and this call's cool-down (the client's
// default is 30 s: after the provider refuses the primary, calls go
// straight to the fallback until it passes or the agent pushes a new
// KeySet).
import { Client, isAuthRejection, statusOf, type FallbackOptions } from "@keyward/client";

interface Reply {
  status: number;
  body: string;
}

async function call(url: string, secret: Buffer): Promise<Reply> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${secret.toString()}` } });
  return { status: res.status, body: await res.text() };
}

async function main(key: string, url: string): Promise<void> {
  const client = new Client({ fallbackCooldownMs: 10_000 });
  const opts: FallbackOptions = {
    service: "billing-worker",
    isAuthError: (x) => isAuthRejection(x) || statusOf(x) === 419,
    fallbackCooldownMs: 5_000,
  };
  const reply: Reply = await client.callWithFallback(key, (secret) => call(url, secret), opts);
  console.log(reply.status, reply.body);
  client.close();
}

const [key, url] = process.argv.slice(2);
main(key ?? "prod/billing-api", url ?? "https://api.example.com/v1/me").catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
