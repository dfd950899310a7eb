"""An asyncio server and an asyncio client: streams and a datagram endpoint.

    asyncio_echo.py server        prints "PORTS <tcp> <udp>"; a stream echo server
                                  (asyncio.start_server) and a UDP echo endpoint
                                  (create_datagram_endpoint), until killed
    asyncio_echo.py client TCP UDP N SIZE
                                  N concurrent stream connections (asyncio.open_connection),
                                  each writes SIZE random bytes in chunks, half-closes, and
                                  reads the echo back; then N datagrams through a datagram
                                  endpoint, answers matched by content and source address.
                                  Prints "STREAMS ok=<k>/<N>" and "DGRAMS ok=<k>/<N>"
"""
import asyncio
import os
import sys


async def echo(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def server():
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    print(f"PORTS {srv.sockets[0].getsockname()[1]} {udp.get_extra_info('sockname')[1]}",
          flush=True)
    async with srv:
        await srv.serve_forever()


async def stream_client(port, size):
    blob = os.urandom(size)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()

    async def read_all():
        while True:
            d = await reader.read(65536)
            if not d:
                return
            got.extend(d)

    rd = asyncio.create_task(read_all())
    for i in range(0, size, 16384):
        writer.write(blob[i:i + 16384])
        await writer.drain()
    writer.write_eof()
    await rd
    writer.close()
    await writer.wait_closed()
    return bytes(got) == blob


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self, want, done):
        self.want, self.done, self.ok = want, done, 0

    def datagram_received(self, data, addr):
        if self.want.pop(data, None) == addr[:2]:
            self.ok += 1
        if not self.want:
            self.done.set_result(True)


async def client(tcp, udp, n, size):
    results = await asyncio.gather(*(stream_client(tcp, size) for _ in range(n)),
                                   return_exceptions=True)
    print(f"STREAMS ok={sum(r is True for r in results)}/{n}", flush=True)
    for r in results:
        if r is not True:
            print(f"stream: {r!r}")
    loop = asyncio.get_running_loop()
    dgrams = {os.urandom(16) + bytes([i]) * (i * 97 % 1400): ("127.0.0.1", udp) for i in range(n)}
    done = loop.create_future()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: UdpClient(dict(dgrams), done), remote_addr=("127.0.0.1", udp))
    for d in dgrams:
        transport.sendto(d)
    try:
        await asyncio.wait_for(done, 10)
    except asyncio.TimeoutError:
        pass
    transport.close()
    print(f"DGRAMS ok={proto.ok}/{n}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(client(*map(int, sys.argv[2:6])))
