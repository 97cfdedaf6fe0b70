// The handler a Fishjam customer writes today: an HTTP endpoint that decodes
// each webhook with the official JS SDK and publishes every notification as
// JSON to core NATS, fire and forget, answering 200 once published.
//
// npm serves only @fishjam-cloud/js-server-sdk 0.25.0, whose ServerMessage
// codec predates NotificationBatch (field 33) and has no
// decodeServerNotifications: the batch is unwrapped here around the SDK's
// codec, one level, as the newer helper does.
//
// Usage: node handler.mjs PORT NATS_URL
import http from 'node:http';
import { connect } from 'nats';
import sdk from '@fishjam-cloud/js-server-sdk';

const { ServerMessage } = sdk;
const [port, natsUrl] = process.argv.slice(2);
const nats = await connect({ servers: natsUrl });
const utf8 = new TextEncoder();

function varint(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [value, at];
    shift += 7;
  }
}

// The length-delimited fields numbered `field` of a protobuf message.
function fields(bytes, field) {
  const out = [];
  let at = 0;
  while (at < bytes.length) {
    let key;
    [key, at] = varint(bytes, at);
    const wire = key & 7;
    if (wire === 0) [, at] = varint(bytes, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      let length;
      [length, at] = varint(bytes, at);
      if (key >>> 3 === field) out.push(bytes.subarray(at, at + length));
      at += length;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

function notifications(body) {
  const [batch] = fields(body, 33);
  const parts = batch ? fields(batch, 1) : [body];
  return parts.map((part) => ServerMessage.decode(part));
}

http
  .createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      try {
        for (const notification of notifications(Buffer.concat(chunks))) {
          const type = Object.keys(notification).find((key) => notification[key] !== undefined);
          nats.publish(`fishjam.${type}`, utf8.encode(JSON.stringify({ type, data: notification[type] })));
        }
        response.writeHead(200).end();
      } catch (error) {
        response.writeHead(400).end(String(error));
      }
    });
  })
  .listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`));
