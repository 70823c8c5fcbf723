"""Time: clock models, the aligner, and offline association of stamp files."""
