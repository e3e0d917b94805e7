"""lotterylab: lottery-ticket and pruning experiments on Ray."""
