// The Fishjam JS server SDK (0.25.0) against a Fishjam (here the bridge's
// simulator): FishjamWSNotifier receives the notifications that
// FishjamClient's room and peer calls cause. Prints one JSON object.
//
// Usage: node --experimental-websocket js_flow.mjs FISHJAM_URL MANAGEMENT_TOKEN
import {
  FishjamClient,
  FishjamWSNotifier,
  ServerMessage,
  UnauthorizedException,
} from '@fishjam-cloud/js-server-sdk';

const [fishjamId, managementToken] = process.argv.slice(2);
const report = { notifications: [] };

const notifier = new FishjamWSNotifier(
  { fishjamId, managementToken },
  (error) => {
    console.error('notifier error', error.message ?? error);
    process.exit(2);
  },
  (code, reason) => {
    report.closed = { code, reason };
  },
);
// 0.25.0 has no ready event: wait for the subscribe response on its socket,
// decoded with the SDK's own ServerMessage.
await new Promise((resolve) => {
  notifier.client.addEventListener('message', (message) => {
    const decoded = ServerMessage.decode(new Uint8Array(message.data));
    if (decoded.subscribeResponse) resolve();
  });
});
const roomDeleted = new Promise((resolve) => {
  for (const name of ['roomCreated', 'peerAdded', 'peerDeleted', 'roomDeleted']) {
    notifier.on(name, (message) => {
      report.notifications.push({ type: name, ...message });
      if (name === 'roomDeleted') resolve();
    });
  }
});

const client = new FishjamClient({ fishjamId, managementToken });
const room = await client.createRoom({ maxPeers: 4, videoCodec: 'vp8' });
const { peer, peerToken } = await client.createPeer(room.id, { metadata: { name: 'Ala' } });
const readBack = await client.getRoom(room.id);
await client.deletePeer(room.id, peer.id);
await client.deleteRoom(room.id);
await roomDeleted;

try {
  await new FishjamClient({ fishjamId, managementToken: 'wrong' }).getAllRooms();
  report.wrongToken = 'accepted';
} catch (error) {
  report.wrongToken = error instanceof UnauthorizedException ? 'unauthorized' : String(error);
}

Object.assign(report, {
  roomId: room.id,
  peerId: peer.id,
  peerTokenGiven: Boolean(peerToken),
  roomConfig: room.config,
  peersReadBack: readBack.peers.map((p) => ({ id: p.id, metadata: p.metadata, status: p.status })),
});
notifier.client.close();
console.log(JSON.stringify(report));
