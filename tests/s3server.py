"""The test S3 server is the demo's: jobs/seaweed.py (SeaweedFS `weed mini` on loopback, credentials required)."""

from jobs.seaweed import SeaweedS3, SeaweedS3Error, find_weed, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
