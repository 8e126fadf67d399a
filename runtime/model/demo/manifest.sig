{
  "format": "hipcad-bundle-sig/1",
  "algorithm": "ed25519",
  "key_id": "ed25519:a74047b39ee5df45",
  "manifest_sha256": "0680a761258e09aa8000cdbeff8e21c98ebe7646a9406fff46ebcdb9318fd1eb",
  "signer": "hipcad demo model (development key; private half destroyed after signing)",
  "signed_at": "2026-11-29T10:08:51Z",
  "signature": "Dc2TiuF0LCzQEDO2iiW0OuWJBhNUy9TeIq2mc7QGd0aqIMV8XkG744Hsg5ixjftUHlBcGB8uxBJ+9rQsjui9Cg=="
}
