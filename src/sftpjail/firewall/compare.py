"""Comparing a chain's live rules with the rules sftpjail would render."""

from __future__ import annotations


def describe_differences(where: str, wanted: list[str], live: list[str]) -> list[str]:
    """Name each rule `live` lacks or has extra, or say the order differs."""

    problems = [f"{where} lacks `{rule}`" for rule in wanted if rule not in live]
    problems.extend(
        f"{where} has unexpected `{rule}`" for rule in live if rule not in wanted
    )
    if not problems and live != wanted:
        problems.append(f"{where} has its rules out of order")
    return problems
