"""Builders the tests share: tiny refiners and labelled shards (`refine`), tiny training
configs and image pools (`train`), hostile tars and PNGs (`tars`), and the generated
stand-in digits and eyes of the evaluation tests (`standins`), a local S3 server
(`s3`), a loopback Ray cluster of the test's own (`cluster`) and pipeline stages that
wait to be killed (`faults`). Fixtures live in tests/conftest.py."""
