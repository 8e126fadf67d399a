{
  "format": "hipcad-bundle-sig/1",
  "algorithm": "ed25519",
  "key_id": "ed25519:f26972146102694f",
  "manifest_sha256": "a69d573272231cc838bf8b3e55974fdec7107a515175cb5b1cf41c7433c60bf9",
  "signer": "hipcad demo model (development key; private half destroyed after signing)",
  "signed_at": "2026-11-29T09:54:32Z",
  "signature": "rZ1ZhXHVFDvWDe3FZwGu/YjxfCdFgmsc4kCnCqMeQXCbqV378P9uVAYAknqu8B0oiPmCAHW/BnWXeW0sY1HACg=="
}
