// keyward run --proxy: routes Node's built-in fetch through keyward's proxy.
//
// `keyward run --proxy` loads this file into every Node process it starts,
// through NODE_OPTIONS=--require PATH. Node's global fetch (undici) ignores
// HTTPS_PROXY, so without it a program's fetch calls would go straight to
// the provider with the placeholder key and be refused.
//
// Which clients go through the proxy, and how:
//   - global fetch (undici inside Node): through this preload, which
//     replaces undici's global dispatcher with an Agent whose connector
//     opens a CONNECT tunnel through the proxy;
//   - axios, got, node-fetch with proxy agents, and other libraries that
//     read HTTP(S)_PROXY themselves: through the environment, as keyward
//     sets it; this preload does not touch them;
//   - https.globalAgent and http.globalAgent (https.request, http.get):
//     left as they are, deliberately.
// A program that installs its own global dispatcher (undici's
// setGlobalDispatcher) replaces this one and goes direct.
//
// The proxy URL comes from KEYWARD_PROXY_URL, else HTTPS_PROXY or
// https_proxy: http://USER:PASS@127.0.0.1:PORT. NO_PROXY (or no_proxy)
// lists the hosts to reach directly: `*`, an exact host, or a domain
// (`example.com` or `.example.com`, matching it and its subdomains), each
// with an optional `:port`. With no proxy URL set, this file does nothing.
//
// It never throws while loading: if the hook cannot be installed, it says
// so in one line on stderr, starting with `keyward: `, and the program runs
// unproxied. It never prints the proxy's credentials.
'use strict';

const net = require('node:net');
const tls = require('node:tls');

// Where undici keeps the global dispatcher that fetch uses.
const DISPATCHER = Symbol.for('undici.globalDispatcher.1');
// How long the proxy may take to open a tunnel (undici's own connect
// timeout is not applied to a custom connector).
const TUNNEL_TIMEOUT_MS = 10_000;
// A CONNECT answer's head longer than this is not one.
const MAX_HEAD = 64 * 1024;

/** The proxy to use, from the environment, or null when none is set. */
function proxyFromEnv() {
  const raw = process.env.KEYWARD_PROXY_URL || process.env.HTTPS_PROXY || process.env.https_proxy;
  if (!raw) return null;
  let url;
  try {
    url = new URL(raw);
  } catch {
    // The URL holds credentials: say which variable, never what it holds.
    throw new Error('the proxy URL (KEYWARD_PROXY_URL or HTTPS_PROXY) is not a valid URL');
  }
  if (url.protocol !== 'http:') {
    throw new Error(`the proxy URL must start with http:, not ${url.protocol}`);
  }
  const auth = url.username
    ? 'Basic ' +
      Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')
    : null;
  return { host: unbracket(url.hostname), port: Number(url.port) || 80, auth };
}

/** `[::1]` as `::1`; other hosts as they are. */
function unbracket(host) {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

/** The NO_PROXY entries, as {host, port} (port '' for any port). */
function noProxyFromEnv() {
  const raw = process.env.NO_PROXY || process.env.no_proxy || '';
  return raw
    .split(',')
    .map((entry) => entry.trim().toLowerCase())
    .filter(Boolean)
    .map((entry) => {
      // `[::1]:8080`, `host:8080`; a bare IPv6 address has no port.
      const bracketed = entry.match(/^\[([^\]]+)\](?::(\d+))?$/);
      if (bracketed) return { host: bracketed[1], port: bracketed[2] || '' };
      const colon = entry.lastIndexOf(':');
      if (colon > 0 && entry.indexOf(':') === colon) {
        return { host: entry.slice(0, colon), port: entry.slice(colon + 1) };
      }
      return { host: entry, port: '' };
    });
}

/** Whether `host:port` is to be reached directly. */
function bypasses(noProxy, host, port) {
  host = unbracket(host).toLowerCase();
  return noProxy.some((entry) => {
    if (entry.port && entry.port !== String(port)) return false;
    if (entry.host === '*') return true;
    const domain = entry.host.replace(/^\*?\./, '');
    return host === domain || host.endsWith('.' + domain);
  });
}

/** The TLS server name for `host`: none for an IP address (RFC 6066). */
function serverName(opts) {
  if (opts.servername) return opts.servername;
  const host = unbracket(opts.hostname);
  return net.isIP(host) ? undefined : host;
}

/**
 * Opens a CONNECT tunnel to `host:port` through `proxy`; calls
 * `cb(null, socket)` with the raw socket once the proxy said 2xx,
 * `cb(err)` otherwise. Calls `cb` exactly once.
 */
function tunnel(proxy, host, port, cb) {
  const authority = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
  const socket = net.connect({ host: proxy.host, port: proxy.port });
  let head = Buffer.alloc(0);
  let done = false;

  const finish = (err) => {
    if (done) return;
    done = true;
    socket.removeListener('readable', onReadable);
    socket.removeListener('error', onError);
    socket.removeListener('end', onEnd);
    socket.removeListener('timeout', onTimeout);
    socket.setTimeout(0);
    if (err) {
      socket.destroy();
      cb(err);
    } else {
      cb(null, socket);
    }
  };
  const onError = (err) =>
    finish(new Error(`keyward proxy: cannot reach the proxy at ${proxy.host}:${proxy.port}: ${err.message}`));
  const onEnd = () =>
    finish(new Error(`keyward proxy: the proxy closed the connection before answering CONNECT ${authority}`));
  const onTimeout = () =>
    finish(new Error(`keyward proxy: no answer to CONNECT ${authority} within ${TUNNEL_TIMEOUT_MS} ms`));
  const onReadable = () => {
    let chunk;
    while (!done && (chunk = socket.read()) !== null) {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > MAX_HEAD) finish(new Error(`keyward proxy: no valid answer to CONNECT ${authority}`));
        continue;
      }
      // What came after the head belongs to the tunnel: give it back.
      const rest = head.subarray(end + 4);
      if (rest.length) socket.unshift(rest);
      const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      const status = Number(statusLine.split(' ')[1]);
      if (status >= 200 && status < 300) {
        finish(null);
      } else {
        finish(new Error(`keyward proxy: CONNECT ${authority} refused: ${statusLine}${hint(status)}`));
      }
    }
  };

  socket.setTimeout(TUNNEL_TIMEOUT_MS);
  socket.on('timeout', onTimeout);
  socket.on('error', onError);
  socket.on('end', onEnd);
  socket.on('readable', onReadable);
  socket.once('connect', () => {
    socket.setNoDelay(true);
    const auth = proxy.auth ? `Proxy-Authorization: ${proxy.auth}\r\n` : '';
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${auth}\r\n`);
  });
}

/** What a refusal most likely means. */
function hint(status) {
  if (status === 407) return ' (the proxy did not accept the credentials in KEYWARD_PROXY_URL)';
  if (status === 403) return ' (the proxy does not allow this host)';
  return '';
}

/** Wraps `socket` (or a new connection) in TLS for `opts`; cb once. */
function secure(opts, socket, cb) {
  const tlsOpts = { servername: serverName(opts), ALPNProtocols: ['http/1.1'] };
  const secured = socket
    ? tls.connect({ ...tlsOpts, socket })
    : tls.connect({ ...tlsOpts, host: unbracket(opts.hostname), port: Number(opts.port) || 443 });
  const onError = (err) => cb(err);
  secured.once('error', onError);
  secured.once('secureConnect', () => {
    secured.removeListener('error', onError);
    cb(null, secured);
  });
}

/** undici's connector: the tunnel, or a direct connection for NO_PROXY. */
function connector(proxy, noProxy) {
  return (opts, cb) => {
    const https = opts.protocol === 'https:';
    const host = unbracket(opts.hostname);
    const port = Number(opts.port) || (https ? 443 : 80);
    if (bypasses(noProxy, host, port)) {
      if (https) return secure(opts, null, cb);
      const socket = net.connect({ host, port });
      const onError = (err) => cb(err);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.removeListener('error', onError);
        cb(null, socket);
      });
      return;
    }
    tunnel(proxy, host, port, (err, socket) => {
      if (err) return cb(err);
      if (https) return secure(opts, socket, cb);
      cb(null, socket);
    });
  };
}

try {
  const proxy = proxyFromEnv();
  if (proxy && typeof globalThis.fetch === 'function') {
    // undici creates its global Agent on first use: a fetch of a data: URL
    // makes it, without touching the network.
    if (!globalThis[DISPATCHER]) globalThis.fetch('data:,x').catch(() => {});
    const current = globalThis[DISPATCHER];
    if (!current) throw new Error("this Node's fetch has no global dispatcher to replace");
    const Agent = current.constructor;
    globalThis[DISPATCHER] = new Agent({ connect: connector(proxy, noProxyFromEnv()) });
  }
} catch (err) {
  process.stderr.write(`keyward: fetch will not go through the proxy: ${err.message}\n`);
}
