"""Fleet aggregation on Flower: each vehicle runs the online adapter on its own stream (a Flower
client); the server averages the adapted weights (FedAvg weighted by frames adapted) and the class
centroids (weighted by pixel counts) and sends the fleet model back. Flower is imported only inside
the modules that need it."""
