UPDATE t SET v = 'bad', n = 0 WHERE id = 1;
