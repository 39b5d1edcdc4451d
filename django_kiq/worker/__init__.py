"""The worker runtime: launcher (process) > manager (threads) > fetcher / processor / scheduler."""
