UPDATE t SET v = 'bad' WHERE id IN (1, 2);
