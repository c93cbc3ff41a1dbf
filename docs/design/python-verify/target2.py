import time, threading
def work():
    while True:
        l = [object() for _ in range(100)]
        time.sleep(0.001)
threading.Thread(target=work, daemon=True).start()
time.sleep(1.0)
work()
