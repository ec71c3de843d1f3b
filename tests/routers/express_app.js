'use strict';
// Upstream app for the persona-guard differential router suite: Express 5
// with default settings (case-insensitive, non-strict routing).
//
// Handlers (any method):
//   app.all('/webhooks/persona')          -> "webhook"
//   app.all('/webhooks/persona/*rest')    -> "webhook-sub" (one or more segments)
//   app.all('/webhooks/persona.v2{.:format}') -> "webhook-v2" (a dotted route
//                                            with an optional format suffix)
//   app.use(...) fallback                 -> "other"
// Control endpoint (raw target, checked before routing): GET /__pg_counts
//
// Usage: node express_app.js   -> prints "LISTENING <port>" once ready.

const express = require('express');

const counts = { webhook: 0, 'webhook-sub': 0, 'webhook-v2': 0, other: 0 };

function handler(name) {
  return (req, res, next) => {
    counts[name] += 1;
    // Read the whole body before answering so keep-alive connections stay usable.
    const path = req.path;
    req.on('data', () => {});
    req.on('end', () => {
      res.set('X-Handler', name).json({ handler: name, path });
    });
    req.on('error', next);
  };
}

const app = express();
app.disable('x-powered-by');

app.use((req, res, next) => {
  if (req.method === 'GET' && req.url === '/__pg_counts') {
    res.json(counts);
    return;
  }
  next();
});

app.all('/webhooks/persona', handler('webhook'));
app.all('/webhooks/persona/*rest', handler('webhook-sub'));
app.all('/webhooks/persona.v2{.:format}', handler('webhook-v2'));
app.use(handler('other'));

// Quiet error handler (Express would otherwise print a stack trace per bad
// request, e.g. a malformed %-escape in a route parameter). Keeps the status.
// eslint-disable-next-line no-unused-vars
app.use((err, req, res, next) => {
  res.status(err.status || err.statusCode || 500).json({ error: String(err.message) });
});

const server = app.listen(0, '127.0.0.1', (err) => {
  if (err) throw err;
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
