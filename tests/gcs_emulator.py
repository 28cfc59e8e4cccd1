"""Cloud Storage for the tests: `gcp-storage-emulator` on 127.0.0.1 in a process of its own,
and the settings each client needs to reach it (`Emulator().env`).

- TensorStore's `gcs` driver (T5X arrays, Orbax's arrays) reads TENSORSTORE_GCS_HTTP_URL.
- TensorFlow's GCS file system (tf.io.gfile and tf.data, and through them etils `epath`,
  Orbax's files and TFDS) has no endpoint setting: it calls https://storage.googleapis.com
  and https://www.googleapis.com. Its libcurl honours `https_proxy` and CURL_CA_BUNDLE, so a
  proxy here answers CONNECT for those hosts with a certificate from a throwaway CA
  (`trustme`) and hands the decrypted requests to the emulator.
- GOOGLE_AUTH_TOKEN_FOR_TESTING and NO_GCE_CHECK: no credentials are looked for.

The emulator runs apart because TensorFlow holds the GIL through a blocking upload: a
server thread in the same process would never answer. Three of its gaps are filled here: an
upload with an empty body (TensorFlow's folder markers) failed, downloads lacked the
`x-goog-generation` header TensorStore reads, and `storageLayout` (which TensorFlow reads
before renaming a folder) is missing.

    python tests/gcs_emulator.py BUCKET   # serves until SIGTERM; prints one JSON line
"""

import http.client
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading

HOSTS = ("storage.googleapis.com", "www.googleapis.com", "oauth2.googleapis.com")
LAYOUT = re.compile(r"^/storage/v1/b/([^/?]+)/storageLayout(\?.*)?$")
HOP_HEADERS = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te"}


class Emulator:
    """`with Emulator("bucket") as gcs:` a fresh, empty bucket; `gcs.env` for the clients."""

    def __init__(self, bucket: str):
        self.bucket = bucket

    def __enter__(self) -> "Emulator":
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.bucket], stdout=subprocess.PIPE, text=True
        )
        ports = json.loads(self.process.stdout.readline())
        emulator = f"http://127.0.0.1:{ports['emulator']}"
        self.env = {
            "TENSORSTORE_GCS_HTTP_URL": emulator,
            "STORAGE_EMULATOR_HOST": emulator,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "NO_GCE_CHECK": "true",
            "https_proxy": f"http://127.0.0.1:{ports['proxy']}",
            "CURL_CA_BUNDLE": ports["ca"],
            "no_proxy": "127.0.0.1,localhost",
            # TensorFlow caches what it listed; a test reads right after writing.
            "GCS_STAT_CACHE_MAX_AGE": "0",
            "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
        }
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)


# --- the emulator's process ------------------------------------------------------------------


def _read_head(stream) -> tuple[str, list[tuple[str, str]]]:
    line = stream.readline(65537).decode("latin-1").rstrip("\r\n")
    headers = []
    while (header := stream.readline(65537)) not in (b"\r\n", b"\n", b""):
        name, value = header.decode("latin-1").split(":", 1)
        headers.append((name.strip(), value.strip()))
    return line, headers


def _read_body(stream, reply, headers: dict[str, str]) -> bytes:
    if headers.get("expect", "").lower() == "100-continue":
        reply.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        reply.flush()
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return stream.read(int(headers.get("content-length") or 0))
    body = b""
    while size := int(stream.readline().split(b";")[0].strip(), 16):
        body += stream.read(size)
        stream.readline()
    while stream.readline() not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return body


class _Tunnel(socketserver.StreamRequestHandler):
    """One CONNECT: TLS as Google's host, then each request passed to the emulator."""

    def handle(self) -> None:
        line, _ = _read_head(self.rfile)
        if not line.startswith("CONNECT "):
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        try:
            with self.server.tls.wrap_socket(self.connection, server_side=True) as tls:
                stream, reply = tls.makefile("rb"), tls.makefile("wb")
                while True:
                    line, headers = _read_head(stream)
                    if not line:
                        return
                    self._answer(line, headers, stream, reply)
        except (OSError, ssl.SSLError):
            return

    def _answer(self, line: str, headers: list, stream, reply) -> None:
        method, target, _ = line.split(" ", 2)
        lower = {name.lower(): value for name, value in headers}
        body = _read_body(stream, reply, lower)
        if LAYOUT.match(target):  # a bucket without hierarchical namespace, as most are
            bucket = LAYOUT.match(target).group(1)
            layout = {"kind": "storage#storageLayout", "bucket": bucket}
            status, reason, answer = 200, "OK", json.dumps(layout).encode()
            answer_headers = [("Content-Type", "application/json")]
        else:
            upstream = http.client.HTTPConnection("127.0.0.1", self.server.emulator, timeout=120)
            kept = {n: v for n, v in headers if n.lower() not in HOP_HEADERS}
            upstream.request(method, target, body, {**kept, "Content-Length": str(len(body))})
            response = upstream.getresponse()
            status, reason, answer = response.status, response.reason, response.read()
            answer_headers = response.getheaders()
            upstream.close()
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in answer_headers:
            if name.lower() in HOP_HEADERS or name.lower() == "content-length":
                continue
            if name.lower() == "location":  # a resumable upload's URL: back through here
                value = value.replace("http://", "https://", 1)
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(answer)}")
        reply.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            reply.write(answer)
        reply.flush()


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True


def _accept_empty_uploads() -> None:
    """gcp-storage-emulator fails an upload whose body is empty (request.data is None)."""
    from gcp_storage_emulator.handlers import objects

    upload = objects._media_upload

    def media_upload(request, response, storage):
        if request.data is None:
            request._data = b""
        return upload(request, response, storage)

    objects._media_upload = media_upload


def _send_generations() -> None:
    """TensorStore reads a downloaded object's generation from `x-goog-generation` (OCDBT's
    manifest, which Orbax writes, depends on it); the emulator sends none."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        try:
            found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            return
        response["x-goog-generation"] = found["generation"]
        response["x-goog-metageneration"] = found["metageneration"]

    objects.download = download_with_generation


def serve(bucket: str) -> None:
    import logging

    import trustme
    from gcp_storage_emulator.server import create_server

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # for sigwait, in every thread
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    _accept_empty_uploads()
    _send_generations()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    emulator.start()
    authority = trustme.CA()
    ca_file = os.path.join(tempfile.mkdtemp(prefix="gcs-ca-"), "ca.pem")
    authority.cert_pem.write_to_path(ca_file)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert(*HOSTS).configure_cert(tls)
    proxy = _Proxy(("127.0.0.1", 0), _Tunnel)
    proxy.tls, proxy.emulator = tls, port
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    print(json.dumps({"emulator": port, "proxy": proxy.server_address[1], "ca": ca_file}))
    sys.stdout.flush()
    signal.sigwait(stop)
    emulator.stop()
    os._exit(0)


if __name__ == "__main__":
    serve(sys.argv[1])
