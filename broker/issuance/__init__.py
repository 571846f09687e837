"""Keys: issuance and minting, the issued-key recorder, introspection and holder revocation."""
