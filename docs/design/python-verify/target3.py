import time
def f():
    a = 1
    x = [0] * 1000
    return x
time.sleep(0.5)
while True:
    f()
