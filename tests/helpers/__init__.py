"""Builders the tests share: tiny refiners and labelled shards (`refine`), tiny training
configs and image pools (`train`), hostile tars and PNGs (`tars`), and the generated
stand-in digits and eyes of the evaluation tests (`standins`), a local S3 server
(`s3`). Fixtures live in tests/conftest.py."""
