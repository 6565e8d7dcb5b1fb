"""Remotes: snapshots pushed to and pulled from S3-compatible object storage.

Layout of a remote under s3://BUCKET/PREFIX/ (see layout.py for the encodings)::

    config                      what this is (format version); written once
    data/XY/PACKID              pack: many chunks or tree objects as stored, then a
                                header listing them; PACKID = BLAKE3 of the pack
    index/INDEXID               which blob is where (pack, offset, length), for a
                                set of packs; INDEXID = BLAKE3 of the index
    snapshots/VOLUME/NAME       manifest: the snapshot record, written last

Modules, one job each: location (remote URLs and records), s3 (the bucket
through boto3, errors as one line), layout (pack, index and manifest
encodings), catalog (what the remote holds), upload (packing and uploading
in threads), fetch (ranges of packs, verified), pace (a rate the user sets),
push, pull, prune, incoming
(Docker's pulls, after Create answers), collector (the cycle collector during
a transfer).
Only this package imports boto3, and only when a remote is used.
"""
