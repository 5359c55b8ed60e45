"""DICOM Upper Layer (PS3.8): PDUs, items, framing, the state machine. Sans-IO."""
