"""What runs inside the TEE (the confidential VM): the only place training data is plaintext."""
