"""Money: what each route's tokens cost (prices), what each request cost (spend), and each
key's money budget."""
