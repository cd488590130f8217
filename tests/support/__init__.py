"""What the tests share: fakes, SDK events, the event endpoint, starting servers,
load and exactly-once counts, and the helpers of each framework's tests."""
