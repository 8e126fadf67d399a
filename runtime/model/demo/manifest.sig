{
  "format": "hipcad-bundle-sig/1",
  "algorithm": "ed25519",
  "key_id": "ed25519:8a38fc0ba5f30131",
  "manifest_sha256": "315cb47198ae2d7688f2244e8abdd7a6b8f4028b5c6ccd631551485cb110bdc6",
  "signer": "hipcad demo model (development key; private half destroyed after signing)",
  "signed_at": "2026-11-29T08:32:08Z",
  "signature": "l7MX44+HpqxtpOH6rup9GZs6W116sMDGyvQOasQFcOWb5Txg3HIZWynSZ/lthQ8/GaOHYnJpQy1qoblDMg6qCg=="
}
