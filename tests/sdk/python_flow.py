"""The Fishjam Python SDK's getting-started flow, unchanged, against a
Fishjam (here the bridge's simulator): client with credential check, notifier,
a room with a webhook URL and batching, a peer with metadata, read back,
delete both. Prints what it saw as one JSON object.

Usage: python python_flow.py FISHJAM_URL MANAGEMENT_TOKEN WEBHOOK_URL
"""

import asyncio
import json
import sys

from fishjam import FishjamClient, FishjamNotifier, PeerOptions, RoomOptions
from fishjam.errors import InvalidFishjamCredentialsError


async def main(fishjam_url: str, token: str, webhook_url: str) -> None:
    report = {}
    try:
        FishjamClient.create_and_verify(
            fishjam_id=fishjam_url, management_token="wrong-" + token
        )
        report["wrong_token"] = "accepted"
    except InvalidFishjamCredentialsError as error:
        report["wrong_token"] = f"refused: {error}"

    notifications = []
    room_deleted = asyncio.Event()
    notifier = FishjamNotifier(fishjam_id=fishjam_url, management_token=token)

    @notifier.on_server_notification
    def handle_notification(notification):
        notifications.append(
            {"type": type(notification).__name__, **notification.to_dict()}
        )
        if type(notification).__name__ == "ServerMessageRoomDeleted":
            room_deleted.set()

    notifier_task = asyncio.create_task(notifier.connect())
    await notifier.wait_ready()

    fishjam_client = FishjamClient.create_and_verify(
        fishjam_id=fishjam_url, management_token=token
    )
    options = RoomOptions(webhook_url=webhook_url, batch_webhook_notifications=True)
    room = await asyncio.to_thread(fishjam_client.create_room, options)
    peer, peer_token = await asyncio.to_thread(
        fishjam_client.create_peer,
        room.id,
        PeerOptions(metadata={"realName": "Tom Reeves"}),
    )
    the_same_room = await asyncio.to_thread(fishjam_client.get_room, room.id)
    await asyncio.to_thread(fishjam_client.delete_peer, room.id, peer.id)
    await asyncio.to_thread(fishjam_client.delete_room, the_same_room.id)
    await asyncio.wait_for(room_deleted.wait(), 30)
    notifier_task.cancel()

    report.update(
        room_id=room.id,
        peer_id=peer.id,
        peer_token_given=bool(peer_token),
        room_config=room.config.to_dict(),
        peers_read_back=[
            {"id": p.id, "metadata": p.metadata.to_dict(), "status": p.status.value}
            for p in the_same_room.peers
        ],
        notifications=notifications,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
