{
  "format": "hipcad-bundle-sig/1",
  "algorithm": "ed25519",
  "key_id": "ed25519:0cb8186fef7fb6fb",
  "manifest_sha256": "d74b67c94577d2e1788a8dd7e21bdba0c78ccd4dc6ab4c529f34dc52e3b6c010",
  "signer": "hipcad demo model (development key; private half destroyed after signing)",
  "signed_at": "2026-11-29T10:44:54Z",
  "signature": "45SWQE2TCtbdWP4f024g4HUDd8+S/2NMk8yC1OAuDY0rxwSqi3ep33v9FOx0oz8sam/mBvL1lQlI4vttL/GSCQ=="
}
