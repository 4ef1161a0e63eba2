"""Side-by-side benchmark of sftpjail and OpenSSH's internal-sftp.

Run it from the repository root with `python -m bench` (or `bench/run.sh`);
docs/benchmarks.md says what it measures and how to read the results.
"""
