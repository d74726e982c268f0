"""Studies of odediff's solvers: NFE against error (:mod:`.study`, with diffusers' schedulers run by
their own loops as peers, and the independent :mod:`.ipndm`) and against sample quality
(:mod:`.quality`), with their tables and plots. The core package never imports this one; the
CLI's ``bench`` commands and the scripts in ``benchmarks/`` do.
"""
