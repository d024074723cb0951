"""A ``gs://`` workdir end to end against a local GCS emulator (``gcp-storage-emulator``,
in memory, on 127.0.0.1): train a tiny config for one epoch, resume to two, evaluate,
report. Run as a script (``python tests/_gcs_worker.py OUT.json``): the endpoints must be
in the environment before gcsfs and TensorStore are imported. Writes what it found as
JSON to OUT.json for ``test_gcs_workdir.py`` to check.
"""
import json
import logging
import os
import socket
import sys


def _free_port() -> int:
  s = socket.socket()
  s.bind(('127.0.0.1', 0))
  port = s.getsockname()[1]
  s.close()
  return port


def _send_generation_headers():
  """Make the emulator's media downloads carry ``x-goog-generation``, as GCS's do.

  TensorStore takes an object's generation from that header on every ranged read; without
  it the generation reads as 0, and OCDBT's next conditional write of a manifest it has
  re-read (when its cache entry is rechecked, which depends on timing) fails with
  "Malformed StorageGeneration". Real GCS always sends the header.
  """
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # pylint: disable=broad-except
      return  # missing object: the 404 stands
    response['x-goog-generation'] = obj['generation']
    response['x-goog-metageneration'] = obj['metageneration']

  objects.download = download_with_generation  # ``objects.get`` looks it up per call


def _start_emulator():
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  _send_generation_headers()
  port = _free_port()
  server = create_server('127.0.0.1', port, in_memory=True, default_bucket='bucket')
  server.start()
  url = f'http://127.0.0.1:{port}'
  os.environ['STORAGE_EMULATOR_HOST'] = url  # gcsfs (epath's gs:// backend)
  os.environ['TENSORSTORE_GCS_HTTP_URL'] = url  # TensorStore (Orbax's array writes)
  # Nothing may look for credentials beyond loopback: TensorStore takes a fixed token,
  # gcsfs connects anonymously, google-auth skips the GCE metadata server, and gcsfs's
  # bucket-type probe (a gRPC call to the real control plane) is off.
  os.environ['GOOGLE_AUTH_TOKEN_FOR_TESTING'] = 'emulator'
  os.environ['NO_GCE_CHECK'] = 'true'
  os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'
  import fsspec.config  # pylint: disable=g-import-not-at-top
  fsspec.config.conf.setdefault('gcs', {})['token'] = 'anon'
  return server


def _conditional_rewrite() -> bool:
  """Whether a read then a write conditional on the read's generation succeeds: what
  OCDBT does to a manifest, done deterministically here rather than when timing says."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  kv = ts.KvStore.open({'driver': 'gcs', 'bucket': 'bucket'}).result()
  kv.write('probe/manifest', b'1').result()
  read = kv.read('probe/manifest').result()
  kv.write('probe/manifest', b'2', if_equal=read.stamp.generation).result()
  ok = kv.read('probe/manifest').result().value == b'2'
  kv.delete_range(ts.KvStore.KeyRange('probe/', 'probe0')).result()
  return ok


def main(out_path: str):
  server = _start_emulator()
  for name in ('gcsfs', 'gcp_storage_emulator', 'absl'):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from sglr_jax import checkpoints, cli, history
  from sglr_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from sglr_jax.training import loop  # pylint: disable=g-import-not-at-top

  wd = 'gs://bucket/run'
  fields = {'train.epochs': 2, 'train.train_fit_every_epochs': 0,
            'eval.suite': ('natural', 'pgd20'), 'parallel.num_devices': 1}
  out = {}
  try:
    out['conditional_rewrite'] = _conditional_rewrite()
    loop.train_and_evaluate(tiny_config(**fields, **{'train.halt_after_epoch': 1}), wd,
                            progress=False)
    out['epochs_after_halt'] = [r['epoch'] for r in history.read_history(wd)]
    out['latest_after_halt'] = checkpoints.available(wd, 'latest')
    hist = loop.train_and_evaluate(tiny_config(**fields), wd, progress=False)
    out['epochs'] = [r['epoch'] for r in hist]
    out['available'] = {k: checkpoints.available(wd, k) for k in checkpoints.KINDS}
    out['final_committed'] = checkpoints.committed(wd, 'final', 2)
    root = epath.Path(wd)
    out['checkpoint_names'] = sorted(
        f'{k}/{p.name}' for k in checkpoints.KINDS for p in (root / 'checkpoints' / k).iterdir())
    res = evaluate.evaluate(tiny_config(**fields), wd, progress=False)
    out['results_epochs'] = [res['best']['epoch'], res['final']['epoch']]
    stored = json.loads((root / 'results.json').read_text())
    out['stored_final_natural'] = stored['final']['natural_acc']
    out['final_natural'] = res['final']['natural_acc']
    out['config_width'] = json.loads((root / 'config.json').read_text())['model']['width']
    out['tensorboard'] = sorted(p.name.split('.')[-1]
                                for p in (root / 'tensorboard' / 'epoch').iterdir())
    cli.run_argv(['run.py', f'--workdir={wd}', '--mode=report'], progress=False)
    out['report'] = sorted(p.name for p in (root / 'report').iterdir())
    out['local_gs_dir'] = os.path.exists('gs:')  # os.path would have made 'gs:/bucket/run'
  finally:
    server.stop()
  with open(out_path, 'w') as f:
    json.dump(out, f)


if __name__ == '__main__':
  main(sys.argv[1])
