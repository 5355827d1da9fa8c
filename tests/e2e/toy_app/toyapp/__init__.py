"""Toy Flower App for the deployment tests: federated estimation of a mean."""
