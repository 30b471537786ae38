// Validates webhook requests with the official `pusher` server SDK (conformance/node_modules).
//
// Usage: node validate_webhook.js KEY SECRET < requests.json
// where requests.json is a JSON array of {"key": X-Pusher-Key, "signature": X-Pusher-Signature,
// "content_type": Content-Type, "body": raw body string}. Prints one JSON line per request with the
// events the SDK parsed; exits 1 on the first request the SDK does not accept.
"use strict";
const path = require("path");
const Pusher = require(path.join(__dirname, "..", "..", "..", "conformance", "node_modules", "pusher"));

const [key, secret] = process.argv.slice(2);
if (!key || !secret) {
  console.error("usage: node validate_webhook.js KEY SECRET < requests.json");
  process.exit(2);
}
const pusher = new Pusher({ appId: "webhook-check", key, secret });

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const requests = JSON.parse(input);
  requests.forEach((r, i) => {
    const webhook = pusher.webhook({
      headers: { "x-pusher-key": r.key, "x-pusher-signature": r.signature, "content-type": r.content_type },
      rawBody: r.body,
    });
    if (!webhook.isValid()) {
      console.error(`request ${i}: the pusher SDK rejected the webhook (key ${r.key}, signature ${r.signature})`);
      process.exit(1);
    }
    console.log(JSON.stringify({ time_ms: webhook.getTime().getTime(), events: webhook.getEvents() }));
  });
});
