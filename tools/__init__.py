"""mwctl, the wire codec, and the test and bench harnesses."""
