"""Central masking: the rules by which a field a key does not grant is masked, kept in one
place and in force on every replica within a second, and ``POST /v1/mask``, which applies
them for resource services in any language."""
