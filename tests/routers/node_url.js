'use strict';
// Upstream app for the persona-guard differential router suite:
// a hand-written router on Node's built-in `http` module that routes on
// `new URL(req.url, 'http://' + req.headers.host).pathname` (the pattern
// Node's own documentation shows), so a `Host` that carries a path would
// route an asterisk-form `OPTIONS *` under it.
//
// Handlers (any method):
//   /webhooks/persona          -> "webhook"
//   /webhooks/persona/<...>    -> "webhook-sub"
//   everything else            -> "other"
// Control endpoint (raw target, checked before routing): GET /__pg_counts
//
// Usage: node node_url.js   -> prints "LISTENING <port>" once ready.

const http = require('node:http');

const counts = { webhook: 0, 'webhook-sub': 0, other: 0 };

function reply(res, name, path) {
  const body = JSON.stringify({ handler: name, path });
  res.writeHead(200, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'X-Handler': name,
  });
  res.end(body);
}

function handle(name, req, res, path) {
  counts[name] += 1;
  // Read the whole body before answering so keep-alive connections stay usable.
  req.on('data', () => {});
  req.on('end', () => reply(res, name, path));
  req.on('error', () => res.destroy());
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/__pg_counts') {
    req.resume();
    const body = JSON.stringify(counts);
    res.writeHead(200, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
    return;
  }

  let pathname;
  try {
    ({ pathname } = new URL(req.url, `http://${req.headers.host}`));
  } catch {
    // e.g. `file://h:80/...`, or a Host the WHATWG parser cannot take as a
    // base: no handler runs.
    req.resume();
    res.writeHead(400, { 'Content-Type': 'text/plain', 'Content-Length': 11 });
    res.end('Bad Request');
    return;
  }
  if (pathname === '/webhooks/persona') {
    handle('webhook', req, res, pathname);
  } else if (pathname.startsWith('/webhooks/persona/')) {
    handle('webhook-sub', req, res, pathname);
  } else {
    handle('other', req, res, pathname);
  }
});

server.listen(0, '127.0.0.1', () => {
  // stdout to a pipe or file is synchronous on Linux, so this line is flushed.
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
